"""Step-by-step PPO over PRM step rewards (Math-Shepherd §3.5): `torchrun ppo.py`. Not built yet (issue 7)."""
import sys

if __name__ == "__main__":
    print("ppo.py: step-by-step PPO is not built yet (issue 7).", file=sys.stderr)
    sys.exit(2)
