"""Ray Tune over the training job: search space, trial driver, results and the winner."""
