"""Load-test kit: the engine simulator, workload scenarios and the reports that prove fairness."""
