"""Checks that train a few steps and judge the parametrization: the coord check."""
