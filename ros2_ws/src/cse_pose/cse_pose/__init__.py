"""cse_pose: category-level 6D object pose from RGB-D (CSE), ROS-free.

Layers, each depending only on the ones before it: ``core`` (numpy geometry, metrics, categories),
``inference`` (the model contract and its onnxruntime / optional torch backends), then the per-frame
``pipeline`` (crop -> model -> correspondences -> RANSAC-Umeyama -> pose -> refine -> smoothing) with
its stages ``instances``, ``refine``, ``smoothing``; beside it ``sync`` (approximate-time pairing of
streams), ``tabletop`` (instance masks from depth) and ``display`` (colours, mesh decimation, drawing).
No ROS, no torch (except the optional torch backend).
"""
