"""What scores a completion in the online objectives: reward models and rule-based Python functions."""
