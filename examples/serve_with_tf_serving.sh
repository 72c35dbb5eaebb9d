#!/usr/bin/env bash
# Serve a tlkeras export with TF Serving and classify one image over REST.
#   examples/serve_with_tf_serving.sh runs/photos/export some/photo.jpg
set -euo pipefail
export_base=$(cd "$1" && pwd)   # the folder that holds the numbered versions
image=$2

docker run -d --rm --name tlkeras-serving -p 8501:8501 \
  -v "$export_base:/models/classifier" -e MODEL_NAME=classifier tensorflow/serving
trap 'docker stop tlkeras-serving >/dev/null' EXIT
sleep 5

# `image_bytes` ends in _bytes, so the REST API takes the image as {"b64": ...}.
curl -s http://localhost:8501/v1/models/classifier:predict \
  -d "{\"instances\": [{\"image_bytes\": {\"b64\": \"$(base64 -w0 "$image")\"}}]}"
