# The image kuberay.yaml runs on every Ray pod: Ray's own GPU image (Python 3.11, ray 2.60.0, CUDA) with
# this checkout installed with its cloud extra (s3fs, gcsfs) and its configs at the working directory.
#
#   docker build -t YOUR-REGISTRY/seabench:0.1.0 .  &&  docker push YOUR-REGISTRY/seabench:0.1.0
#
# The same image serves the CPU head (it simply sees no GPU) and the GPU workers.
FROM rayproject/ray:2.60.0-py311-gpu

COPY --chown=ray:users . /home/ray/seabench
RUN pip install --no-cache-dir "/home/ray/seabench[cloud]"
WORKDIR /home/ray/seabench
