output "region" {
  description = "The cluster's region (AWS_REGION for the coordinators' autoscaler and Prometheus's EC2 discovery)."
  value       = var.region
}

output "vpc_id" {
  description = "The cluster's VPC."
  value       = module.network.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets, one per zone, where every Flotilla host runs."
  value       = module.network.private_subnet_ids
}

output "nat_public_ips" {
  description = "Public addresses the hosts reach the internet from (empty without NAT), for allow-lists of webhook receivers."
  value       = module.network.nat_public_ips
}

output "coordinator_instance_ids" {
  description = "Instance ids of the coordinator and etcd hosts (for aws ssm start-session)."
  value       = module.control.instance_ids
}

output "coordinator_private_ips" {
  description = "Fixed private addresses of the coordinator and etcd hosts."
  value       = module.control.private_ips
}

output "coordinator_addresses" {
  description = "Every coordinator replica as IP:7070, comma-separated: the value of --coordinator (or FLOTILLA_COORDINATOR) for agents and clients."
  value       = join(",", local.coordinator_addresses)
}

output "etcd_endpoints" {
  description = "etcd client URLs, comma-separated: the value of --etcd for coordinators and agents."
  value       = join(",", local.etcd_endpoints)
}

output "autoscale" {
  description = "The coordinators' --autoscale value (FLOTILLA_AUTOSCALE)."
  value       = "aws:${module.agents.group_name}"
}

output "agent_group_name" {
  description = "Name of the agent auto scaling group."
  value       = module.agents.group_name
}

output "agent_group_arn" {
  description = "ARN of the agent auto scaling group (the only group the coordinator role may change)."
  value       = module.agents.group_arn
}

output "agent_launch_template_id" {
  description = "The agents' launch template."
  value       = module.agents.launch_template_id
}

output "agent_ami_id" {
  description = "The image agents boot."
  value       = module.agents.ami_id
}

output "agent_lifecycle_hook_name" {
  description = "The termination lifecycle hook that holds a leaving agent while it drains."
  value       = module.agents.lifecycle_hook_name
}

output "artifact_bucket" {
  description = "Name of the artifact bucket."
  value       = module.storage.bucket_name
}

output "checkpoint_url" {
  description = "The agents' --artifacts value: where checkpoints go."
  value       = "s3://${module.storage.bucket_name}/${trimsuffix(var.checkpoint_prefix, "/")}"
}

output "release_url" {
  description = "Where to upload the release agents install at boot: flotilla, flotilla.sha256, certs/ca.pem, certs/agent.pem."
  value       = "s3://${module.storage.bucket_name}/${var.dist_prefix}"
}

output "artifact_kms_key_alias" {
  description = "KMS key alias for the agent key parameter (aws ssm put-parameter --key-id)."
  value       = module.storage.kms_key_alias
}

output "agent_key_parameter_name" {
  description = "SSM SecureString parameter to put agent-key.pem in before agents start."
  value       = local.agent_key_parameter_name
}

output "agent_etcd_key_parameter_name" {
  description = "SSM SecureString parameter to put certs/etcd/agent-key.pem in before agents start."
  value       = local.agent_etcd_key_parameter_name
}

output "agent_role_unique_id" {
  description = "For `flotilla certs issue-instances --role-id`: the agents' IAM role's unique id."
  value       = module.iam.agent_role_unique_id
}

output "agent_certificates_url" {
  description = "For `flotilla certs issue-instances --to`: where per-instance agent certificates go."
  value       = "s3://${module.storage.bucket_name}/${local.agent_certificates_prefix}"
}

output "monitoring_instance_id" {
  description = "Instance id of the Prometheus and Grafana host."
  value       = module.monitoring.instance_id
}

output "monitoring_private_ip" {
  description = "Private address of the Prometheus and Grafana host (Grafana on 3000, Prometheus on 9090)."
  value       = module.monitoring.private_ip
}

output "security_group_ids" {
  description = "Security groups by role."
  value = {
    coordinator = module.security.coordinator_security_group_id
    agent       = module.security.agent_security_group_id
    monitoring  = module.security.monitoring_security_group_id
  }
}

output "ansible_inventory" {
  description = "An Ansible inventory for this cluster, in the format of ansible/inventory.example.ini: terraform output -raw ansible_inventory > ansible/inventory.ini"
  value = templatefile("${path.module}/templates/inventory.ini.tftpl", {
    coordinators = [
      for index, ip in module.control.private_ips : {
        name        = module.control.names[index]
        ip          = ip
        instance_id = module.control.instance_ids[index]
      }
    ]
    monitoring_ip          = module.monitoring.private_ip
    monitoring_instance_id = module.monitoring.instance_id
    region                 = var.region
    autoscale              = "aws:${module.agents.group_name}"
    cluster_name           = var.cluster_name
  })
}
