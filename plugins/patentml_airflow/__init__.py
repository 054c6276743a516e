"""Airflow glue for PatentML: settings from Connections, DAG configuration, ingest sources, the UI page.

Nothing here imports torch, transformers, scikit-learn or pandas; ``patentml`` itself is imported
inside functions only, so DAG files that use this package stay cheap to parse.
"""
