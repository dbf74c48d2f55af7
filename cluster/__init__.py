"""Running ladders on a Ray cluster: Jobs API submission, placement, KubeRay manifests."""
