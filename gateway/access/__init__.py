"""Running the gateway as a shared service: key stores, budgets, usage accounting."""
