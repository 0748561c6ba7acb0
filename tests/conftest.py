import pytest
import torch

import regattn

# The parameters each mapping is tested with: the defaults, and a regime that fuses.
PARAMS = {
    "softmax": [{}],
    "sparsemax": [{}],
    "fusedmax": [{"lam": 0.1}, {"lam": 1.0}],
    "oscarmax": [{"lam": 0.01}, {"lam": 0.3}],
    "sq_pnorm_max": [{"p": 1.5}, {"p": 1.2}],
    "entmax15": [{}],
}
CASES = [(name, params) for name in regattn.MAPPINGS for params in PARAMS[name]]
CASE_IDS = [name + "".join(f"-{k}{v}" for k, v in p.items()) for name, p in CASES]


def case_params():
    return pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
