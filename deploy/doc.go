// Package deploy holds stagecast's deployment files: the container image
// (Dockerfile), Kubernetes manifests (k8s/, kustomize base and production
// overlay), a docker-compose file, the Grafana dashboard and Prometheus alert
// rules. It has no code; its tests validate those files offline in `make test`.
package deploy
