"""interest-pipeline: hourly LLM-embedding user interest vectors and recommendations.

Airflow imports this package while parsing DAGs, so nothing heavy is imported here.
"""
