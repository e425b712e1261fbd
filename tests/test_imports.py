"""What importing precondlab costs, and which way its imports run.

Every CLI start (``precondlab list``, every ``run``) loads the registry's entry points, which must
not pull in clean-fid or torchvision (torchvision imports torch._dynamo: seconds on every
start); they are imported where FID or a sample grid is computed. The registry itself imports
no component: built-ins are entry points, declared the way plugins declare theirs."""

import subprocess
import sys


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_loading_every_component_imports_neither_cleanfid_nor_torchvision():
    code = ("from precondlab import registry; import sys; registry.load_plugins(); "
            "print('cleanfid' in sys.modules, 'torchvision' in sys.modules, len(registry.list_entries()))")
    cleanfid, torchvision, count = run(code).split()
    assert (cleanfid, torchvision) == ("False", "False") and int(count) > 20


def test_the_registry_imports_no_component():
    code = ("import sys, precondlab.registry; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('precondlab'))))")
    assert run(code).split() == ["precondlab", "precondlab.registry"]
