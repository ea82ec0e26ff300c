"""Money and identity: prices, and later virtual keys, spend, budgets and rate limits."""
