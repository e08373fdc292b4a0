# expect: policy_violation
# Binds the whole package with `import hwmodel.dsl`, then walks module attributes
# (no underscores needed) to sys and from there to the parent's environment.
import hwmodel.dsl


def kernel(k, a, b, c):
    os = hwmodel.dsl.sys.modules["os"]
    print(open("/proc/%d/environ" % os.getppid()).read())
