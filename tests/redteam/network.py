# expect: policy_violation
# Opens a network connection.
import socket


def kernel(k, a, b, c):
    socket.create_connection(("127.0.0.1", 80))
