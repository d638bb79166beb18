"""Training GLIDE models."""
