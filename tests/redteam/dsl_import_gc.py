# expect: policy_violation
# Imports gc through the DSL module and searches every live object for the recorder's
# state (op lists, the machine) to edit what gets reported.
from hwmodel.dsl import gc


def kernel(k, a, b, c):
    for obj in gc.get_objects():
        if isinstance(obj, list) and len(obj) > 1000:
            obj.clear()
