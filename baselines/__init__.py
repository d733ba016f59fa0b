"""Segmenter plugins: MONAI 2-D networks trained by the harness's shared loop."""
