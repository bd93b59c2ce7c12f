"""zsdeploy."""
