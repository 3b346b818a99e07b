"""Development tools of cse_pose: never installed on a robot (not in the Docker image, not in colcon).

``oracle`` (a test model that reads canonical coordinates from NOCS colours, ray-cast box frames),
``ros_io`` (DDS test harness), ``demo`` (``make demo``), ``synthetic_camera`` (a ROS camera publishing the
training generator's frames), ``bench`` / ``bench_solver`` (``make bench``, ``make bench-solver``),
``readme_params`` (the README's parameter table). They may import every other package of the repository.
"""
