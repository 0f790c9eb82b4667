// Package deploy holds stagecast's deployment files: the container image
// (Dockerfile, image/), Kubernetes manifests (k8s/: kustomize base and
// overlays), the Helm chart (helm/), a docker-compose file, the Grafana
// dashboard and Prometheus alert rules. It has no code; its tests validate
// those files offline in `make test`, and build and run the image where a
// container engine can.
package deploy
