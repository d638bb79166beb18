"""GLIDE noised CLIP."""
