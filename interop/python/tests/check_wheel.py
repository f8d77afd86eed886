"""The wheel as a user gets it: built from a NativeAOT build, installed with pip into a fresh virtual environment,
then the package's whole test suite run from there with no MOERGING_LIBRARY, PYTHONPATH or DOTNET_ROOT, from a
directory outside the repository (so `import moerging` can only find the installed copy).

    python3 check_wheel.py --native DIR --junit FILE

The environment sees the system's site-packages (numpy from the distribution); pip installs with --no-index, so
nothing is downloaded. The suite runs with MOERGING_EXPECT_WHEEL=1, which adds the checks that the installed copy
and its bundled library were the ones loaded, and that no .NET runtime was.
"""

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run(command, **kwargs):
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--native", required=True, help="the NativeAOT build: libmoerging.so.<ABI> and MoErging.Interop.so")
    parser.add_argument("--junit", required=True, help="where the suite writes its JUnit report")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moerging-wheel-") as scratch:
        wheels = os.path.join(scratch, "wheels")
        run([sys.executable, os.path.join(HERE, "..", "build_wheel.py"), "--native", arguments.native, "--out", wheels])
        (wheel,) = [os.path.join(wheels, name) for name in os.listdir(wheels)]
        venv = os.path.join(scratch, "venv")
        run([sys.executable, "-m", "venv", "--system-site-packages", venv])
        python = os.path.join(venv, "bin", "python")
        run([python, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check", "--quiet", wheel])
        environment = {k: v for k, v in os.environ.items() if k not in ("MOERGING_LIBRARY", "PYTHONPATH", "DOTNET_ROOT")}
        environment.update(MOERGING_EXPECT_CPU_ONLY="1", MOERGING_EXPECT_WHEEL="1")
        work = os.path.join(scratch, "work")
        os.mkdir(work)
        run([python, os.path.join(HERE, "test_moerging.py"), "--junit", os.path.abspath(arguments.junit)],
            env=environment, cwd=work)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as error:
        sys.exit(f"check_wheel.py: {' '.join(error.cmd)} exited with {error.returncode}")
