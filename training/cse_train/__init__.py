"""Training side of cse_pose: model, renderer, data, losses, train loop, evaluation, ONNX export."""
