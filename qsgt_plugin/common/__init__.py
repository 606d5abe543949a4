"""Small pieces every layer may use: module modes, accuracy on a loader, atomic file output."""
