"""Public datasets: registry, fetch with sha256 checks, loaders, framing and evaluation-set files."""
