"""What importing precondlab costs: the CLI (``precondlab list``, every ``run``) imports
``precondlab.builtins``, which must not pull in clean-fid or torchvision (torchvision imports
torch._dynamo: seconds on every start). They are imported where FID or a sample grid is computed."""

import subprocess
import sys


def test_builtins_import_neither_cleanfid_nor_torchvision():
    code = "import precondlab.builtins, sys; print('cleanfid' in sys.modules, 'torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
