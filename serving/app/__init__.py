"""The recommender Serve application (bundles by contextual bandits, items, A/B experiments).

Deploy with ``serving.app.api:build_app`` (see ``deploy/local/serve.yaml``).
"""
