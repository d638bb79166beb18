"""Training data: the procedural Shapes text-image dataset (``shapes``) and loaders."""
