"""PatentML: multi-label CPC subclass classification of patent abstracts, kept fresh by Airflow."""

__version__ = "0.1.0"
