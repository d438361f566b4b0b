"""Image reduction: the area-mean reducer and the streaming 2x pyramid built with it."""
