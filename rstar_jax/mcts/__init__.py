"""Monte Carlo tree search over reasoning steps: tree arrays, jitted select/expand/backup, host driver.

tree.py     B trees as arrays; select / expand / backup (pure, vmapped, jitted)
policy.py   the step-policy interface and the scripted policy
lm_policy.py  the LM policy over rstar_jax.generate
scorer.py   the PPM as a step scorer
candidates.py  dedupe and the one-final-step rule
search.py   the lockstep host driver (continuous batching over a problem stream)
output.py   the resumable trees shard
run.py      `search` (training data) and `solve` (inference with PPM voting)
"""
from rstar_jax.mcts.policy import FinishRequest, PolicyCounters, ScriptedPolicy, StepPolicy, StepRequest
from rstar_jax.mcts.run import search, solve
from rstar_jax.mcts.search import LockstepSearch, SearchStats, StepScorer

__all__ = ["FinishRequest", "LockstepSearch", "PolicyCounters", "ScriptedPolicy", "SearchStats", "StepPolicy",
           "StepRequest", "StepScorer", "search", "solve"]
