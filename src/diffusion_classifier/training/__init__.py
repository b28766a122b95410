"""Training the bundled MNIST model and its discriminative CNN baseline."""
