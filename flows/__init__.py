"""Ray orchestration of layerleak stages, and the `layerleak` CLI."""
