"""The MNIST softmax-classifier pipeline: pure functions the DVC stages in pipeline/ call."""
