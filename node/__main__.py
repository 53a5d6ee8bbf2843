"""``python -m node``: run one node, leader or follower as ROLE says."""

from node.app import main

main()
