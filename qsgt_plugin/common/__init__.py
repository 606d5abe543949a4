"""Small pieces every layer may use: module modes, accuracy on a loader, atomic file output,
the datasets a recipe can name (a plugin adds more)."""
