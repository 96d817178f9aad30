"""Emulated hardware for tests, demos and benchmarks: virtual BMCs that speak real IPMI and
the machines behind them. The product never imports this package."""
