"""The README's "write your own flat-minima optimizer" example runs, and is SAM: it matches fk.SAM."""
import pathlib
import re

import torch

import flatmin_kernels as fk

from .optim import models as M

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("### Write your own flat-minima optimizer on flatmin"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_sam_matches_fk_sam():
    namespace = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    mine, ref = M.make_net(), M.make_net()
    opt = namespace["MySAM"](mine.parameters(), lr=0.1, rho=0.05)
    ref_opt = fk.SAM(ref.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    for batch in M.batches(5):
        opt.step(M.closure_for(mine, batch, opt.zero_grad))
        ref_opt.step(M.closure_for(ref, batch, ref_opt.zero_grad))
    M.assert_same_model(mine, ref, rtol=1e-6)
    assert len(readme_example().strip().splitlines()) <= 25
