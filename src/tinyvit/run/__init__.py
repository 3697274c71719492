"""Running models on images: options, devices and dtypes, the one runner, and what is built on it
(evaluate, explain, fit, embedding files)."""
