"""Internal building blocks of the verifier. Unstable: no compatibility promises."""
