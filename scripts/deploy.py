"""brownie wrapper around backend.chain.deploy (the one deployment implementation).

    brownie run scripts/deploy.py [--network NAME]

Deploys with Settings().admin_key to the network brownie is connected to, grants the roles to the
Settings role keys' addresses and writes Settings().deployment_file.
"""

from __future__ import annotations

from brownie import network

from backend.chain.client import ChainClient
from backend.chain.contracts import Deployment
from backend.chain.deploy import RoleHolders, deploy_all
from backend.settings import Settings


def main() -> Deployment:
    settings = Settings.from_env()
    rpc_url = network.web3.provider.endpoint_uri
    client = ChainClient(rpc_url, settings.admin_key)
    deployment = deploy_all(
        client,
        RoleHolders.from_settings(settings),
        interval_seconds=settings.interval_seconds,
        deployment_file=settings.deployment_file,
    )
    print(deployment.to_json())
    print(f"written to {settings.deployment_file}")
    return deployment
