"""The search itself: the session, the study loop, what to run next (dispatch), samplers, warm start."""
