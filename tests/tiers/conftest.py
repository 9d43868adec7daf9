import pytest

# Detailed assertion messages from the shipped conformance suite (oocstore/testing).
pytest.register_assert_rewrite("oocstore.testing")
