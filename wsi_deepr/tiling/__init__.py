"""Tiling decisions: the pixel size the model runs at, the window grid and its blend weights, blank glass, the plan."""
