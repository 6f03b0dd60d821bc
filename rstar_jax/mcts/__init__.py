"""Monte Carlo tree search over reasoning steps: tree arrays, jitted select/expand/backup, host driver."""
