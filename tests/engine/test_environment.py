"""The header's environment: what it names, and what collecting it must not cost."""


def test_the_environment_names_the_torch_installed_without_importing_it():
    import subprocess
    import sys

    import torch

    from soaktop.engine.records import environment

    assert environment.collect()["torch"] == torch.__version__
    code = ("import sys; from soaktop.engine.records import environment; environment.collect(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
