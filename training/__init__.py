"""Training: offline model lifecycle (datasets, training, tuning, evaluation, prediction, export).
Pulls torch; never deployed with producers or the dashboard.
"""
