"""The logged MLflow model's code (MLflow's models-from-code): loading the model runs this file, which builds
the MLP from its architecture file and reads its weights from safetensors. No object is unpickled."""

from mnist_softmax.tracking.logged_model import serve_classifier

serve_classifier()
