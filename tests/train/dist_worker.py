"""One process of the 2-process SFT run: `python dist_worker.py PROCESS_ID PORT WORKDIR` (4 CPU devices each).

Process 0 writes the loss curve to WORKDIR/curve.json.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[2]}", num_processes=2,
                           process_id=int(sys.argv[1]))

sys.path.insert(0, os.path.dirname(__file__))
from test_sft import EXAMPLES, sft, train_cfg  # noqa: E402
from tiny_models import TinyLM  # noqa: E402

from rstar_jax.steps import build_prompt  # noqa: E402
from rstar_jax.tokenizer import train_demo_tokenizer  # noqa: E402


def main():
    workdir = sys.argv[3]
    tok = train_demo_tokenizer([build_prompt(e.query) + e.response for e in EXAMPLES] * 4, vocab_size=320)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    curve = []
    with jax.set_mesh(mesh):
        sft.train_sft(TinyLM(tok.vocab_size), tok, EXAMPLES, train_cfg(epochs=3), workdir, mesh=mesh,
                      on_step=lambda step, m: curve.append(float(m["loss"])))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "curve.json"), "w") as f:
            json.dump(curve, f)


if __name__ == "__main__":
    main()
