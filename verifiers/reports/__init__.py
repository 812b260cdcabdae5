"""Patient access reports with Merkle inclusion proofs, and their offline check."""
