# expect: policy_violation
# Reads the environment (API keys) through the os module.
from os import environ


def kernel(k, a, b, c):
    print(environ.get("OPENAI_API_KEY"))
